# The bundled models (this repository's models/: <detector>/<version>/ and the `production` links) as an
# image for the Helm chart: the API pods copy /models into their models volume when they start
# (deploy/helm/tickguard, values `models.image`). The build context is models/ itself, because the
# repository's .dockerignore keeps models out of the other images' context:
#   docker build -f deploy/models.Dockerfile -t <registry>/tickguard-models:0.1.0 models
FROM busybox:1.36
COPY . /models
