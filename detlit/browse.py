"""``python -m detlit.browse``."""

from detlit.training.browse import main

if __name__ == "__main__":
    main()
