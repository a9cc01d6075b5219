"""The main demo (replaced by the TorchTrainer demo once the trainer lands)."""

from demo_manager import main

if __name__ == "__main__":
    import os
    import sys

    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join("demo_runs", "manager"))
