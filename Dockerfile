# The neo_jax training image: Python 3.11, the runtime lock file's pins (no torch), the tpu extra,
# the package installed (editable) in /app.
#
#   bash launch/build_image.sh us-docker.pkg.dev/my-proj/my-repo      # build + push
#
# The default image of launch/xpk.py (--image) and of its JobSet manifest. /app is also
# where xpk copies a checkout over a base image (xpk --base-docker-image --script-dir), so
# the editable install then runs that checkout's code.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The dependencies first: this layer is rebuilt only when the lock file or pyproject changes.
COPY requirements-lock.txt pyproject.toml /tmp/build/
COPY launch/pod_requirements.py /tmp/build/launch/
RUN python /tmp/build/launch/pod_requirements.py --lock /tmp/build/requirements-lock.txt \
        --pyproject /tmp/build/pyproject.toml > /tmp/build/requirements-pod.txt \
 && pip install -r /tmp/build/requirements-pod.txt \
 && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"

COPY . /app
RUN pip install --no-deps -e '.[tpu]' \
 && python -c "import jax, libtpu, neo_jax; print('neo_jax', neo_jax.__version__, 'jax', jax.__version__)"

CMD ["python", "-m", "neo_jax.train", "--helpshort"]
