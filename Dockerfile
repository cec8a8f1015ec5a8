# modelbus: one image for every part (ingress, registry, model and NSQL workers, history sink).
# The command picks the part: `docker run IMAGE registry --config ...`. See compose.yaml and docs/scaling.md.
# No model file and no secrets are in the image: models go to the $MODELBUS_MODEL_CACHE volume
# (`modelbus models pull`), secrets come from the environment through the config's ${env:NAME}.

FROM python:3.11-slim AS build

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# the pinned dependencies first, so a code change does not reinstall them
COPY requirements/runtime.txt /src/requirements/runtime.txt
RUN pip install -r /src/requirements/runtime.txt

COPY pyproject.toml /src/
COPY modelbus /src/modelbus
RUN pip install --no-deps /src

# llama.cpp's llama-server for local models, from the pinned source, in the portable flavor (AVX2/FMA/F16C):
# an image runs on CPUs other than the one that built it
RUN MODELBUS_ENGINE_CACHE=/opt/engines modelbus engine build --flavor portable \
    && cp /opt/engines/llama-server-*-portable-*/llama-server /opt/venv/bin/llama-server \
    && rm -rf /opt/engines


FROM python:3.11-slim

# llama-server is built with OpenMP
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 --user-group modelbus \
    && mkdir -p /var/cache/modelbus/models /var/lib/modelbus /etc/modelbus \
    && chown modelbus:modelbus /var/cache/modelbus/models /var/lib/modelbus

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MODELBUS_MODEL_CACHE=/var/cache/modelbus/models \
    MODELBUS_LLAMA_SERVER=/opt/venv/bin/llama-server \
    MODELBUS_CONFIG=/etc/modelbus/modelbus.yaml

USER modelbus
WORKDIR /var/lib/modelbus
EXPOSE 8090
ENTRYPOINT ["modelbus"]
CMD ["--help"]
