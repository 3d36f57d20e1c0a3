# The driver's image for running autotuner inside a Kubernetes cluster (README, "Running in the
# cluster"): Ray's own image, at the Ray version pyproject.toml pins, with this project installed
# from its own files. It runs the driver and the trials' load generator (genai-bench); the engines
# run in OME's images.
#   docker build -t REGISTRY/autotuner:0.1.0 . && docker push REGISTRY/autotuner:0.1.0
ARG RAY_VERSION=2.60.0
FROM rayproject/ray:${RAY_VERSION}-py311
COPY --chown=ray:users . /tmp/autotuner
RUN pip install --no-cache-dir /tmp/autotuner && rm -rf /tmp/autotuner
