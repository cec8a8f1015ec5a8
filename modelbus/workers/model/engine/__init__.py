"""llama.cpp's ``llama-server``: built once per user from pinned source, run as a supervised child process."""
