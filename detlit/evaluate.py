"""``python -m detlit.evaluate``."""

from detlit.inference.evaluate import main

if __name__ == "__main__":
    main()
