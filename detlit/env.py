"""``python -m detlit.env``."""

from detlit.common.env import main

if __name__ == "__main__":
    main()
