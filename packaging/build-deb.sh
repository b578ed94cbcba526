#!/bin/sh
# Builds the mamori .deb from a staged copy of the tree: packaging/debian becomes debian/.
# Output: build/deb/mamori_VERSION_ARCH.deb (amd64 here: parsers/ is compiled with mypyc;
# + .changes, .buildinfo, the -dbgsym package), then lintian.
# Debian's python3 must come first on PATH (pyenv's shadows it on developer machines).
set -eu
cd "$(dirname "$0")/.."
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
OUT=${OUT:-build/deb}
version=$(dpkg-parsechangelog -l packaging/debian/changelog -SVersion)
project=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)
if [ "$version" != "$project" ]; then
    echo "build-deb: debian/changelog says $version, pyproject.toml says $project" >&2
    exit 1
fi
src="$OUT/mamori-$version"
rm -rf "$OUT"
mkdir -p "$src"
tar --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist --exclude=./out \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache --exclude=.mypy_cache \
    --exclude=.ruff_cache --exclude=.hypothesis -cf - . | tar -C "$src" -xf -
cp -r packaging/debian "$src/debian"
(cd "$src" && dpkg-buildpackage -us -uc -b) > "$OUT/build.log" 2>&1 || {
    tail -n 60 "$OUT/build.log" >&2
    exit 1
}
deb="$OUT/mamori_${version}_$(dpkg --print-architecture).deb"
[ -f "$deb" ] || { echo "build-deb: $deb was not built" >&2; exit 1; }
echo "built $deb"
# lintian: errors and warnings fail the build; each override is justified in
# packaging/debian/mamori.lintian-overrides.
lintian --fail-on error,warning --display-info --tag-display-limit 0 "$OUT"/mamori_"$version"_*.changes \
    | tee "$OUT/lintian.txt"
count=$(grep -c '^[EW]:' "$OUT/lintian.txt" || true)
echo "lintian: $count errors/warnings"
# The pipe into tee hides lintian's exit status (sh has no pipefail): count instead.
[ "$count" = 0 ]
