# longjax in a container, for launch/k8s.py or any cluster: this checkout in /longjax (the WORKDIR, so that
# `--config configs/llama2_7b.py` resolves), installed editable with the accelerator's extra.
#
#   docker build -t REGISTRY/longjax:tpu  --build-arg EXTRA=tpu .    # GKE TPU slices (jax[tpu], libtpu)
#   docker build -t REGISTRY/longjax:cuda --build-arg EXTRA=cuda .   # NVIDIA GPUs (jax[cuda13]; the host's driver)
#   docker build -t longjax:cpu .                                    # EXTRA=cpu: plain jax
#   docker run --rm longjax:cpu python -m longjax.train --config configs/tiny.py --workdir /tmp/tiny
#
# PYTHON must satisfy setup.py's python_requires (>= 3.11).
ARG PYTHON=3.12
FROM python:${PYTHON}-slim
ARG EXTRA=cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /longjax
# Dependencies first (a layer that survives code changes), then the code itself.
COPY setup.py README.md ./
RUN mkdir longjax && touch longjax/__init__.py \
    && if [ "$EXTRA" = cpu ]; then pip install -e .; else pip install -e ".[$EXTRA]"; fi \
    && rm -rf longjax
COPY . .
RUN pip install --no-deps -e . && python -c "import longjax, os; assert os.path.exists('configs/base.py')"
CMD ["python", "-m", "longjax.train", "--help"]
