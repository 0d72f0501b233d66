#!/bin/bash
# install.sh - install zramnbd: the binary, the setup script, the systemd units and the docs.
#
#   scripts/install.sh [--prefix /usr/local] [--destdir DIR] [--unit-dir DIR] [--binary PATH]
#
#   --prefix    where bin/, sbin/ and share/ go (default /usr/local)
#   --destdir   staging root for packaging; nothing is reloaded or enabled
#   --unit-dir  systemd system unit directory (default /etc/systemd/system)
#   --binary    install this zramnbd binary instead of building `swift build -c release`
#   --generator-dir  systemd generator directory (default: pkg-config's systemdsystemgeneratordir,
#               else /usr/lib/systemd/system-generators)
#
# Installs:  PREFIX/bin/zramnbd  PREFIX/sbin/zramnbd-swap
#            UNIT_DIR/{zramnbd.service,zramnbd.socket,zramnbd-setup@.service}
#            GENERATOR_DIR/zramnbd-generator -> PREFIX/bin/zramnbd
#            PREFIX/share/doc/zramnbd/{daemon.md,zramnbd.conf.example}
# It never writes /etc/zramnbd.conf: without one the daemon starts its default device.
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/usr/local
destdir=
unitdir=/etc/systemd/system
binary=
generatordir=$(pkg-config --variable=systemdsystemgeneratordir systemd 2>/dev/null || true)
generatordir=${generatordir:-/usr/lib/systemd/system-generators}
utildir=$(pkg-config --variable=systemdutildir systemd 2>/dev/null || true)
utildir=${utildir:-/usr/lib/systemd}
while (($#)); do
	case $1 in
	--prefix) prefix=$2; shift 2 ;;
	--destdir) destdir=$2; shift 2 ;;
	--unit-dir) unitdir=$2; shift 2 ;;
	--binary) binary=$2; shift 2 ;;
	--generator-dir) generatordir=$2; shift 2 ;;
	-h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
	esac
done

if [[ -z $binary ]]; then
	scripts/install-deps.sh --build
	swift build -c release --product zramnbd
	binary=$(swift build -c release --show-bin-path)/zramnbd
fi
[[ -x $binary ]] || { echo "install.sh: $binary is not an executable" >&2; exit 1; }

bindir=$prefix/bin
sbindir=$prefix/sbin
docdir=$prefix/share/doc/zramnbd

install -d "$destdir$bindir" "$destdir$sbindir" "$destdir$unitdir" "$destdir$docdir" "$destdir$generatordir"
install -m 0755 "$binary" "$destdir$bindir/zramnbd"
install -m 0755 scripts/zramnbd-swap "$destdir$sbindir/zramnbd-swap"
# The generator is the binary itself, dispatching on its name.
ln -sfn "$bindir/zramnbd" "$destdir$generatordir/zramnbd-generator"
# Units of earlier versions, replaced by the generator.
rm -f "$destdir$unitdir/zramnbd-swap@.service" "$destdir$unitdir/zramnbd-fs@.service"
nbdclient=$(command -v nbd-client || echo /usr/sbin/nbd-client)
for unit in systemd/*.service systemd/*.socket; do
	sed -e "s|@BINDIR@|$bindir|g" -e "s|@SBINDIR@/nbd-client|$nbdclient|g" -e "s|@SBINDIR@|$sbindir|g" \
		-e "s|@SYSTEMD_UTIL_DIR@|$utildir|g" \
		-e "s|/usr/local/share/doc/zramnbd|$docdir|g" "$unit" >"$destdir$unitdir/${unit##*/}"
	chmod 0644 "$destdir$unitdir/${unit##*/}"
done
install -m 0644 docs/daemon.md "$destdir$docdir/daemon.md"
install -m 0644 docs/zramnbd.conf.example "$destdir$docdir/zramnbd.conf.example"

echo "installed zramnbd into ${destdir:-}$prefix, units into ${destdir:-}$unitdir, the generator into ${destdir:-}$generatordir"
if [[ -z $destdir ]] && [[ -d /run/systemd/system ]]; then
	systemctl daemon-reload
	cat <<EOT
next steps:
  edit /etc/zramnbd.conf (a [zram0] section makes swap on /dev/nbd0; see zramnbd.conf.example)
  systemctl daemon-reload                           # runs zramnbd-generator
  systemctl start swap.target local-fs.target       # starts zramnbd.service and the devices
  zramnbd status
EOT
fi
