"""Command-line checkpoint tools: conversion in both directions and the random-weight reference checkpoint."""
