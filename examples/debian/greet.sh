#!/bin/sh
hello
echo "greet: running as $(id -un) in $(pwd); FIREBUILD_BASE=$FIREBUILD_BASE"
