"""``python -m detlit.fit``."""

from detlit.training.cli import main

if __name__ == "__main__":
    main()
