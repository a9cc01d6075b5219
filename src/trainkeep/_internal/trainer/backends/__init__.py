"""Where the worker group runs: ``local`` starts worker processes on this machine."""
