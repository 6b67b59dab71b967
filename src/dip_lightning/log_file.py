"""The job's log file (`<job folder>/train.log`), Hydra's job_logging `file` handler (conf/train.yaml).

logging.FileHandler prints a "--- Logging error ---" traceback to stderr for every line it cannot write; on a full
disk that is every line of the job and of the jobs after it. This handler says it once, in one line, and stops
writing the file; the console keeps every line. The file is opened at the first line (delay), so a job whose
folder cannot take it still starts and fails with its own message.
"""

from __future__ import annotations

import logging
import sys


class JobLogFile(logging.FileHandler):
    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None, delay: bool = True) -> None:
        super().__init__(filename, mode=mode, encoding=encoding, delay=delay)
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            super().handleError(record)  # a bad log call: logging's own report
            return
        self.failed = True
        try:
            self.close()
        except OSError:
            pass
        sys.stderr.write(
            f"dip-run: the log file {self.baseFilename} cannot be written ({error.strerror or error}); "
            "the job's lines go on on the console only.\n"
        )
