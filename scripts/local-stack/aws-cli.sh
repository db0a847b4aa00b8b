#!/bin/sh
# The stack's `aws`: the pinned AWS CLI v1 (stack.sh installs it), given
# the service's endpoint of the local stack explicitly.
#
# Why: AWS CLI v1 answers SQS in every region it knows with its legacy
# `<region>.queue.amazonaws.com` names (awscli/customizations/
# overridesslcommonname.py) unless `--endpoint-url` is given, whatever
# AWS_ENDPOINT_URL_SQS or AWS_ENDPOINT_URL say: `aws sqs list-queues` went
# to https://queue.amazonaws.com/. So the service's
# AWS_ENDPOINT_URL_<SERVICE> (what `stack.sh env` sets, and what the SDKs
# honour by themselves) is passed as `--endpoint-url` when no
# `--endpoint-url` is on the command line.
real=$(cd "$(dirname "$0")/.." && pwd)/cli/bin/aws
service=
for arg in "$@"; do
  case "$arg" in
    --endpoint-url|--endpoint-url=*) exec "$real" "$@" ;;
    -*) ;;
    *) if [ -z "$service" ]; then service=$arg; fi ;;
  esac
done
var=AWS_ENDPOINT_URL_$(printf '%s' "$service" | tr 'a-z-' 'A-Z_')
eval "url=\${$var:-}"
if [ -n "$service" ] && [ -n "$url" ]; then
  exec "$real" --endpoint-url "$url" "$@"
fi
exec "$real" "$@"
