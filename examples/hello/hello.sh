#!/bin/sh
echo "hello from a firebuild guest"
