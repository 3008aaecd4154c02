"""The bottom layer: argument checks, atomic files, devices and the data mesh. Imports nothing of ours."""
