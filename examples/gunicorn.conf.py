"""gunicorn settings for a service in multi-process mode; serves examples/flask_app.py:

    cd examples && ../.venv/bin/gunicorn -c gunicorn.conf.py flask_app:application

Any worker answering /metrics speaks for all four.
"""

import os
import shutil
import tempfile

# Folds a dead worker's file into the archive as soon as gunicorn reaps it.
from jobmetrics.multiprocess import child_exit  # noqa: F401

workers = 4
bind = "127.0.0.1:8000"

# The directory must be set before the workers start and be empty at each start of the
# service. A deployment sets a fixed one (emptied by its start script, see
# docs/gunicorn.md); this example makes a fresh one. A reload (SIGHUP) re-reads this file
# with the variable already set, so it keeps the directory and every count.
# The directory it made is removed when gunicorn exits (the variable below remembers it
# across reloads); a directory given by the deployment is left alone.
_MADE = "JOBMETRICS_EXAMPLE_MADE_DIR"
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="jobmetrics-")
    os.environ[_MADE] = os.environ["PROMETHEUS_MULTIPROC_DIR"]


def on_exit(server):
    made = os.environ.get(_MADE)
    if made and made == os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(made, ignore_errors=True)
