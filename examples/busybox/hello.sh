#!/bin/sh
echo "${GREETING:-hello} (kernel $(uname -r), user $(id -un))"
