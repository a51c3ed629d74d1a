"""``python -m detlit.report``."""

from detlit.reporting.report import main

if __name__ == "__main__":
    main()
