"""``python -m detlit.check``."""

from detlit.data.check import main

if __name__ == "__main__":
    main()
