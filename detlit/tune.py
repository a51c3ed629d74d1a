"""``python -m detlit.tune``."""

from detlit.training.tune import main

if __name__ == "__main__":
    main()
