# The container node's pod sandbox image (hack/node-images.sh): one static program, no shell.
FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
