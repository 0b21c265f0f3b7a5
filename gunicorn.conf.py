"""Production serving of the API: ``gunicorn -c gunicorn.conf.py``.

gthread workers: a long-poll (``?wait=``) or an event stream
(``/v1/jobs/{id}/events``) holds a thread, not a process, so threads keep the
API answering while clients wait. Each process serves at most
``GPUQ_MAX_STREAMS`` streams and ``GPUQ_MAX_LONG_POLLS`` long-polls
(api/wait_slots.py), fewer together than its threads: the rest always answer
submits and reads. gthread's ``timeout``
watches the worker's main loop, not a request, so a long stream is not killed
for it. Why not gevent: see "Event streams" in the README. Settings come from
the environment like everything else.
"""

import logging
import multiprocessing
import os

from tasks.logs import gunicorn_logconfig

wsgi_app = "api:create_app()"
bind = os.environ.get("GPUQ_API_BIND", f"{os.environ.get('GPUQ_API_HOST', '127.0.0.1')}:"
                                      f"{os.environ.get('GPUQ_API_PORT', '8000')}")
worker_class = "gthread"
workers = int(os.environ.get("GPUQ_API_WORKERS", min(4, multiprocessing.cpu_count())))
threads = int(os.environ.get("GPUQ_API_THREADS", "16"))
# Long-polls last up to 30 s; the timeout must sit well above that.
timeout = 60
graceful_timeout = 30
keepalive = 5
# Each worker listens on a socket of its own (SO_REUSEPORT) and the kernel spreads new
# connections over them. With one shared socket, whichever worker wakes first accepts a burst
# of keep-alive connections and keeps them: measured here, often all of them, leaving the
# other workers idle while one saturates a core. The price: a worker that dies drops the
# connections still waiting in its own backlog (clients retry, as after any reset).
reuse_port = True
accesslog = os.environ.get("GPUQ_API_ACCESS_LOG", "-") or None  # empty: no access log
errorlog = "-"
# gunicorn's lines and the app's in one format: text, or JSON with GPUQ_LOG_FORMAT=json,
# each line about a job (the access line of /v1/jobs/<id> too) carrying its id.
logconfig_dict = gunicorn_logconfig()
logging.captureWarnings(True)
# Build the app (and fail on bad settings) in the master, before forking.
preload_app = True
control_socket_disable = True


def on_starting(server):
    """Refuse to serve when waiting requests could hold every thread: event streams and long-polls
    are bounded per process (api/wait_slots.py) below its threads, so that some always answer
    submits and reads. Checked against the threads gunicorn will run, however they were given
    (this file, ``--threads``, ``GUNICORN_CMD_ARGS``)."""
    from tasks.settings import Settings, SettingsError

    try:
        settings = Settings.from_env()
    except SettingsError:
        return  # the app, loaded already, reports it
    waits = settings.max_streams + settings.max_long_polls
    if waits >= server.cfg.threads:
        raise SystemExit(f"GPUQ_MAX_STREAMS + GPUQ_MAX_LONG_POLLS ({waits}) must be under the API's threads "
                         f"({server.cfg.threads}, GPUQ_API_THREADS): otherwise waiting clients can hold every "
                         "thread and no submit is answered")
