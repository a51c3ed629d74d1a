"""``python -m detlit.predict``."""

from detlit.inference.predict import main

if __name__ == "__main__":
    main()
