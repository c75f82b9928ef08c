# The gateway in a container: docker build -t llm-gateway . && docker run -p 8000:8000 llm-gateway
# Mount your config at /app/config/gateway.yaml (or set GATEWAY_CONFIG); README: Running more than one instance.
FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN python3 -m pip install --no-cache-dir -e .
ENV HOST=0.0.0.0 PORT=8000
EXPOSE 8000
HEALTHCHECK CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"
CMD ["python3", "-m", "gateway", "serve"]
