"""`python -m mavcli`: the same as the `mav` executable."""

from mavcli.cli.app import main

if __name__ == "__main__":
    main()
