"""`python -m gift_mlx`: the `gift` command line."""

from .cli import main

main()
