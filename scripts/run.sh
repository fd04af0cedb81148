#!/usr/bin/env bash
# Builds bosun (release) and runs it with the given arguments, e.g.
#   ./scripts/run.sh up --data-dir ./bosun-data
# Installs what the build needs when it is missing: protoc, which the etcd client's
# generated code is built with.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
if ! command -v protoc >/dev/null; then
  echo "installing protobuf-compiler (the build needs protoc)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler
fi
exec cargo run --release -q --manifest-path "$repo/Cargo.toml" -p bosun-cli -- "$@"
