"""``python -m detlit.sample``."""

from detlit.data.sample import main

if __name__ == "__main__":
    main()
