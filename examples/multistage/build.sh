#!/bin/sh
# build-app PREFIX VERSION: compiles the example and installs it under PREFIX.
set -eu
make -C /src app
install -D -m 0755 /src/app "$1/bin/app"
echo "$2" > "$1/VERSION"
