"""``python -m detlit.split``."""

from detlit.data.split import main

if __name__ == "__main__":
    main()
