from distilbert_jax.cli.main import main

main()
