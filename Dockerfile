# stemlink server, CPU (ONNX Runtime). Build and run: docs/OPERATIONS.md, "Docker".
#   docker build -t stemlink .
#   docker run -d --name stemlink -p 5005:5005/udp -p 127.0.0.1:9105:9105 \
#     -v "$PWD/models:/models:ro" -v "$PWD/keys:/keys:ro" stemlink
# The model is not in the image: export it once (`stemlink export spleeter`) into the
# models volume. The key file comes from `stemlink keygen` and must be readable by uid 10001.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin stemlink

WORKDIR /opt/stemlink
COPY pyproject.toml README.md ./
COPY src ./src
COPY export ./export
COPY engine ./engine
COPY udp_server ./udp_server
COPY udp_client ./udp_client
COPY wire ./wire
COPY bench ./bench
# the server extra: onnxruntime (CPU), prometheus-client, cryptography; no torch
RUN pip install '.[server]' && rm -rf /opt/stemlink/src /opt/stemlink/export /opt/stemlink/engine \
    /opt/stemlink/udp_server /opt/stemlink/udp_client /opt/stemlink/wire /opt/stemlink/bench /root/.cache

USER stemlink
VOLUME ["/models", "/keys"]
EXPOSE 5005/udp 9105/tcp
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9105/healthz', timeout=2)"]
ENTRYPOINT ["stemlink", "serve"]
CMD ["--model", "/models/spleeter-2stems", "--host", "0.0.0.0", "--port", "5005", \
     "--key-file", "/keys/stemlink.key", "--metrics-port", "9105", "--metrics-host", "0.0.0.0"]
