#!/usr/bin/env bash
# extproc quickstart (sidecar mode): from an empty cluster to a governed pod, in dependency
# order. Needs kubectl (with its built-in kustomize) and openssl; nothing in the repository
# is edited.
#
#   k8s/quickstart.sh install NAMESPACE OPENAI_KEY_FILE [ANTHROPIC_KEY_FILE]
#       1. namespace extproc-system
#       2. the webhook certificate: cert-manager if its CRDs are installed
#          (k8s/components/cert-manager), else a self-signed CA + serving certificate
#       3. the injector, its webhook and admission policy, and a dev Redis (k8s/overlays/dev),
#          with the cluster's token issuer read from the API server's OIDC discovery
#       4. the app namespace: created, its ConfigMap, its provider-keys Secret, then the label
#   k8s/quickstart.sh rotate-cert     self-signed path: a new serving certificate from the
#                                     same CA (caBundle unchanged; the injector reloads it)
#   k8s/quickstart.sh sync-config     re-apply the one ConfigMap to every labelled namespace
#   k8s/quickstart.sh plan            print the manifests `install` applies, in order
#
# Environment: OVERLAY (default k8s/overlays/dev), TLS=auto|cert-manager|self-signed,
# TOKEN_ISSUER (skip discovery), EGRESS=1 (also apply k8s/components/sidecar-egress in the
# app namespace, for namespaces that deny egress by default), KUBECTL (default kubectl).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
KUBECTL=${KUBECTL:-kubectl}
OVERLAY=${OVERLAY:-$HERE/overlays/dev}
TLS=${TLS:-auto}
SYSTEM_NS=extproc-system
SERVICE=extproc-injector.$SYSTEM_NS.svc
DEFAULT_ISSUER=https://kubernetes.default.svc.cluster.local

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
k() { "$KUBECTL" "$@"; }

plan() {
  # The order `install` applies manifests in (tests/k8s/test_quickstart.py renders and
  # validates each, in this order). "-n NS" marks per-namespace kustomizations.
  echo "-f $HERE/base/namespace.yaml"
  if [ "${1:-}" = cert-manager ]; then echo "-k $HERE/components/cert-manager"; fi
  echo "-k $OVERLAY"
  echo "-n NS -k $HERE/tenant"
  if [ "${EGRESS:-0}" = 1 ]; then echo "-n NS -k $HERE/components/sidecar-egress"; fi
}

uses_cert_manager() {
  case "$TLS" in
    cert-manager) return 0 ;;
    self-signed) return 1 ;;
    auto) k get crd certificates.cert-manager.io >/dev/null 2>&1 ;;
    *) die "TLS must be auto, cert-manager or self-signed" ;;
  esac
}

# Self-signed path: a CA kept in Secret extproc-injector-ca (10 years) signs a 90-day serving
# certificate; the webhook trusts the CA, so rotating the serving certificate never touches
# caBundle. `rotate-cert` (e.g. from a monthly CronJob or cron) issues the next one.
issue_serving_cert() {
  local dir=$1
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/tls.key" \
    -subj "/CN=$SERVICE" -out "$dir/tls.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s,DNS:%s.cluster.local\nextendedKeyUsage=serverAuth\n' "$SERVICE" "$SERVICE" \
    > "$dir/ext.cnf"
  openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days 90 \
    -extfile "$dir/ext.cnf" -out "$dir/tls.crt" 2>/dev/null
  k -n "$SYSTEM_NS" create secret tls extproc-injector-tls --cert="$dir/tls.crt" --key="$dir/tls.key" \
    --dry-run=client -o yaml | k apply -f -
}

self_signed() {
  local dir
  dir=$(mktemp -d)
  if k -n "$SYSTEM_NS" get secret extproc-injector-ca >/dev/null 2>&1; then
    say "reusing the webhook CA in Secret extproc-injector-ca"
    k -n "$SYSTEM_NS" get secret extproc-injector-ca -o 'jsonpath={.data.tls\.crt}' | base64 -d > "$dir/ca.crt"
    k -n "$SYSTEM_NS" get secret extproc-injector-ca -o 'jsonpath={.data.tls\.key}' | base64 -d > "$dir/ca.key"
  else
    say "creating a webhook CA (Secret extproc-injector-ca)"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 -keyout "$dir/ca.key" \
      -out "$dir/ca.crt" -subj /CN=extproc-injector-ca \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
    k -n "$SYSTEM_NS" create secret tls extproc-injector-ca --cert="$dir/ca.crt" --key="$dir/ca.key"
  fi
  issue_serving_cert "$dir"
  CA_BUNDLE=$(base64 -w0 < "$dir/ca.crt")
  rm -rf "$dir"
}

discover_issuer() {
  if [ -n "${TOKEN_ISSUER:-}" ]; then echo "$TOKEN_ISSUER"; return; fi
  local doc
  doc=$(k get --raw /.well-known/openid-configuration 2>/dev/null) || { echo "$DEFAULT_ISSUER"; return; }
  # The discovery document is one JSON object; its "issuer" is what the tokens carry.
  printf '%s' "$doc" | sed -n 's/.*"issuer"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p'
}

install() {
  local ns=${1:-} openai=${2:-} anthropic=${3:-}
  [ -n "$ns" ] && [ -n "$openai" ] || die "usage: $0 install NAMESPACE OPENAI_KEY_FILE [ANTHROPIC_KEY_FILE]"
  [ -r "$openai" ] || die "cannot read $openai"
  [ -z "$anthropic" ] || [ -r "$anthropic" ] || die "cannot read $anthropic"

  say "1/4 namespace $SYSTEM_NS"
  k apply -f "$HERE/base/namespace.yaml"

  say "2/4 webhook certificate"
  CA_BUNDLE=""
  if uses_cert_manager; then
    k apply -k "$HERE/components/cert-manager"
    k -n "$SYSTEM_NS" wait --for=condition=Ready certificate/extproc-injector --timeout=120s
  else
    self_signed
  fi

  say "3/4 injector, admission policies, Redis ($OVERLAY)"
  local issuer settings
  issuer=$(discover_issuer)
  [ -n "$issuer" ] || issuer=$DEFAULT_ISSUER
  say "    service-account token issuer: $issuer"
  k apply -k "$OVERLAY"
  if [ -n "$CA_BUNDLE" ]; then
    k patch mutatingwebhookconfiguration extproc-injector --type=json \
      -p "[{\"op\":\"add\",\"path\":\"/webhooks/0/clientConfig/caBundle\",\"value\":\"$CA_BUNDLE\"}]"
  fi
  # The issuer is a fact about the cluster: it goes into the injector's settings (one place),
  # which pass it to every sidecar as EXTPROC_TOKEN_ISSUER.
  settings=$(k -n "$SYSTEM_NS" get configmap extproc-injector-settings -o 'jsonpath={.data.settings\.yaml}')
  if ! printf '%s\n' "$settings" | grep -q '^extproc_env:'; then
    settings=$(printf '%s\nextproc_env:\n  - name: EXTPROC_TOKEN_ISSUER\n    value: "%s"\n' "$settings" "$issuer")
    printf '%s\n' "$settings" | k -n "$SYSTEM_NS" create configmap extproc-injector-settings \
      --from-file=settings.yaml=/dev/stdin --dry-run=client -o yaml | k apply -f -
    k -n "$SYSTEM_NS" rollout restart deploy/extproc-injector
  fi
  k -n "$SYSTEM_NS" rollout status deploy/extproc-injector --timeout=180s

  say "4/4 app namespace $ns"
  k create namespace "$ns" --dry-run=client -o yaml | k apply -f -
  k apply -n "$ns" -k "$HERE/tenant"
  if [ "${EGRESS:-0}" = 1 ]; then k apply -n "$ns" -k "$HERE/components/sidecar-egress"; fi
  local files=(--from-file=openai="$openai")
  [ -z "$anthropic" ] || files+=(--from-file=anthropic="$anthropic")
  k -n "$ns" create secret generic extproc-provider-keys "${files[@]}" --dry-run=client -o yaml | k apply -f -
  # Last: from now on every new pod in $ns is injected (or refused, or opted out).
  k label namespace "$ns" extproc.io/inject=enabled --overwrite
  say "done. Try: kubectl -n $ns run t --rm -it --image=curlimages/curl --restart=Never -- sh -c" \
      "'curl -s \$OPENAI_BASE_URL/models -H \"Authorization: Bearer \$(cat \$EXTPROC_TOKEN_FILE)\"'"
}

rotate_cert() {
  k -n "$SYSTEM_NS" get secret extproc-injector-ca >/dev/null 2>&1 \
    || die "no Secret extproc-injector-ca: the self-signed path was not used (cert-manager rotates by itself)"
  self_signed
  say "new serving certificate in Secret extproc-injector-tls; the injector reloads it within a minute"
}

sync_config() {
  local ns
  for ns in $(k get namespace -l extproc.io/inject=enabled -o 'jsonpath={.items[*].metadata.name}'); do
    say "ConfigMap extproc-config -> $ns"
    k apply -n "$ns" -k "$HERE/tenant"
  done
  say "policy/masking/approvals/recording/tools changes apply without restarts;" \
      "listeners/providers/identity/redis/envoy changes need the pods restarted"
}

case "${1:-}" in
  install) shift; install "$@" ;;
  rotate-cert) rotate_cert ;;
  sync-config) sync_config ;;
  plan) shift; plan "$@" ;;
  *) sed -n '2,20p' "$0" >&2; exit 2 ;;
esac
