#!/usr/bin/env bash
# `make demo`: starts the local cluster and shows a Deployment's pods running as local processes.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
# The platform's state: $KUBELAMBDA_STATE_DIR, else ~/.local/state/kubelambda/default (found from any folder).
state=$(.venv/bin/python -c 'from kubelambda.cli._common import default_state_dir; print(default_state_dir())')

kubelambda dev up --state-dir "$state"
# The gateway checks who calls (auth on, as Lambda): curl signs with the developer access key `dev up` made.
key_id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["aws_access_key_id"])' "$state/dev.json")
key_secret=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["aws_secret_access_key"])' "$state/dev.json")
signed() { curl -s --aws-sigv4 "aws:amz:us-east-1:lambda" --user "$key_id:$key_secret" "$@"; }
kubeconfig=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["kubeconfig"])' "$state/dev.json")
kubectl_bin=$(bash hack/kube-binaries.sh 2>/dev/null | sed -n 's/^KUBE_BIN=//p')/kubectl
kc() { KUBECONFIG=$kubeconfig "$kubectl_bin" "$@"; }
k() { echo "\$ kubectl $*"; kc "$@"; }

echo
echo "==> A Deployment of 3 replicas of a tiny HTTP server image, and a Service selecting them"
kc create namespace demo --dry-run=client -o yaml | kc apply -f - >/dev/null
echo "\$ kubectl -n demo create deployment web --image=kubelambda.io/dev/httpserver --replicas=3 --port=8080"
kc -n demo create deployment web --image=kubelambda.io/dev/httpserver --replicas=3 --port=8080 \
  --dry-run=client -o yaml | kc apply -f -
echo "\$ kubectl -n demo expose deployment web --port=80 --target-port=8080"
kc -n demo expose deployment web --port=80 --target-port=8080 --dry-run=client -o yaml | kc apply -f -
k -n demo rollout status deployment/web --timeout=120s
echo
k get nodes -o wide
echo
k -n demo get pods -o wide
echo
k -n demo get endpointslices
echo
echo "==> Each pod is a process on this machine, listening on its own address"
for pod in $(kc -n demo get pods -l app=web -o name); do
  ip=$(kc -n demo get "$pod" -o jsonpath='{.status.podIP}')
  pid=$(kc -n demo get "$pod" -o jsonpath='{.status.containerStatuses[0].containerID}')
  pid=${pid#local://}
  printf '%s  pid %s  %s\n' "$pod" "$pid" "$(ps -o args= -p "$pid")"
  printf '    curl http://%s:8080/ -> %s\n' "$ip" "$(curl -s "http://$ip:8080/")"
done
echo
k -n demo logs deployment/web --tail=3

echo
echo "==> A Lambda function: examples/hello-python3.11, scaled to zero until its first invocation"
k -n demo apply -f examples/hello-python3.11/function.yaml
k -n demo wait --for=condition=Ready fn/hello-python311 --timeout=120s
k -n demo get fn
echo
echo "\$ kubelambda invoke demo/hello-python311 --payload '{\"name\": \"demo\"}' --log    # cold: starts the first instance"
kubelambda invoke demo/hello-python311 --payload '{"name": "demo"}' --log --state-dir "$state"
echo
echo "\$ kubelambda invoke demo/hello-python311 --payload '{\"name\": \"again\"}'          # warm"
kubelambda invoke demo/hello-python311 --payload '{"name": "again"}' --state-dir "$state"
gateway=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["gateway_url"])' "$state/dev.json")
echo
echo "\$ curl --aws-sigv4 aws:amz:us-east-1:lambda --user \$KEY:\$SECRET $gateway/http/demo/hello-python311/hi    # an HTTP route (API Gateway payload 2.0)"
signed "$gateway/http/demo/hello-python311/hi"
echo
echo "\$ curl $gateway/http/demo/hello-python311/hi    # unsigned: refused, as a function URL with AWS_IAM"
curl -s -i "$gateway/http/demo/hello-python311/hi" | grep -i -e '^HTTP' -e '^x-amzn-ErrorType'

echo
echo
echo "==> Lambda's control-plane API: the AWS CLI creates a function from a zip (kept in the code store, SeaweedFS)"
work=$(mktemp -d)
python3 - "$work/hello.zip" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w") as archive:
    archive.writestr("app.py", "def handler(event, context):\n    return {'message': f'Hello from version {context.function_version}!'}\n")
PY
awsl() { AWS_ACCESS_KEY_ID=$key_id AWS_SECRET_ACCESS_KEY=$key_secret AWS_DEFAULT_REGION=us-east-1 \
  aws lambda --endpoint-url "$gateway" "$@"; }
awsl delete-function --function-name demo/zipped >/dev/null 2>&1 || true  # a demo run before this one
echo "\$ aws lambda create-function --function-name demo/zipped --runtime python3.11 --handler app.handler \\"
echo "    --role arn:aws:iam::demo:role/default --zip-file fileb://hello.zip --publish"
awsl create-function --function-name demo/zipped --runtime python3.11 --handler app.handler \
  --role arn:aws:iam::demo:role/default --zip-file "fileb://$work/hello.zip" --publish \
  --query '{Version: Version, State: State, CodeSha256: CodeSha256, CodeSize: CodeSize}' --output json
echo "\$ aws lambda wait published-version-active --function-name demo/zipped --qualifier 1"
awsl wait published-version-active --function-name demo/zipped --qualifier 1
echo "\$ aws lambda invoke --function-name demo/zipped --qualifier 1 out.json && cat out.json"
awsl invoke --function-name demo/zipped --qualifier 1 "$work/out.json" --output json
cat "$work/out.json"
echo
echo
echo "==> HTTP Triggers: examples/http-api, a REST API of two routes (docs/triggers.md)"
k -n demo apply -f examples/http-api/function.yaml
k -n demo wait --for=condition=Ready fn/notes trigger/notes-collection trigger/notes-item --timeout=120s
# The gateway learns routes from its watch of Triggers: give it a moment (bounded) after Ready.
for _ in $(seq 50); do
  [[ $(signed -o /dev/null -w '%{http_code}' "$gateway/api/demo/notes") != 404 ]] && break
  sleep 0.2
done
echo "\$ curl --aws-sigv4 ... -X POST $gateway/api/demo/notes -d '{\"text\": \"hello\"}'"
signed -X POST "$gateway/api/demo/notes" -d '{"text": "hello"}'
echo
echo "\$ curl --aws-sigv4 ... $gateway/api/demo/notes/1"
signed "$gateway/api/demo/notes/1"
echo
echo
echo "==> A schedule Trigger: examples/cron fires nightly-report every minute (its bridge is a pod too)"
k -n demo apply -f examples/cron/function.yaml
k -n demo wait --for=condition=Ready trigger/every-minute --timeout=120s
k -n demo get triggers
echo
cat <<EOT
The same function answers the AWS SDKs and CLI at the gateway ($gateway), signed with the developer key, e.g.
  eval "\$(.venv/bin/kubelambda dev env)"
  aws lambda invoke --endpoint-url \$GW --function-name demo/hello-python311 --payload '{}' out.json
EOT
echo
cat <<EOT
The local cluster keeps running. Try, from any folder:
  eval "\$($PWD/.venv/bin/kubelambda dev env)"   # KUBECONFIG, PATH (kubelambda, kubectl), AWS_*, GW
  kubectl -n demo scale deployment/web --replicas=0      # the processes end
  kubelambda logs nightly-report -n demo --follow        # a "report for ..." line every minute
  kubelambda dev status
  kubelambda dev down                                    # stops everything

Where to look:
  curl -s $gateway/metrics | grep kubelambda_invocations_total   # Prometheus metrics (docs/metrics.md)
  helm/kubelambda/files/dashboard.json                           # the Grafana dashboard (a Prometheus scraping the chart)
  docs/tracing.md                                                # traces: set KUBELAMBDA_TRACING_ENDPOINT to an OTLP/HTTP collector
EOT
