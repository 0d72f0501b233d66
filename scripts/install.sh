#!/bin/bash
# install.sh - install zramnbd: the binary, the setup script, the systemd units and the docs.
#
#   scripts/install.sh [--prefix /usr/local] [--destdir DIR] [--unit-dir DIR] [--binary PATH]
#
#   --prefix    where bin/, sbin/ and share/ go (default /usr/local)
#   --destdir   staging root for packaging; nothing is reloaded or enabled
#   --unit-dir  systemd system unit directory (default /etc/systemd/system)
#   --binary    install this zramnbd binary instead of building `swift build -c release`
#
# Installs:  PREFIX/bin/zramnbd  PREFIX/sbin/zramnbd-swap
#            UNIT_DIR/{zramnbd.service,zramnbd.socket,zramnbd-swap@.service,zramnbd-fs@.service}
#            PREFIX/share/doc/zramnbd/{daemon.md,zramnbd.conf.example}
# It never writes /etc/zramnbd.conf: without one the daemon starts its default device.
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/usr/local
destdir=
unitdir=/etc/systemd/system
binary=
while (($#)); do
	case $1 in
	--prefix) prefix=$2; shift 2 ;;
	--destdir) destdir=$2; shift 2 ;;
	--unit-dir) unitdir=$2; shift 2 ;;
	--binary) binary=$2; shift 2 ;;
	-h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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

install -d "$destdir$bindir" "$destdir$sbindir" "$destdir$unitdir" "$destdir$docdir"
install -m 0755 "$binary" "$destdir$bindir/zramnbd"
install -m 0755 scripts/zramnbd-swap "$destdir$sbindir/zramnbd-swap"
for unit in systemd/*.service systemd/*.socket; do
	sed -e "s|@BINDIR@|$bindir|g" -e "s|@SBINDIR@|$sbindir|g" \
		-e "s|/usr/local/share/doc/zramnbd|$docdir|g" "$unit" >"$destdir$unitdir/${unit##*/}"
	chmod 0644 "$destdir$unitdir/${unit##*/}"
done
# The setup script finds the binary through PATH; units run with a PATH that may lack PREFIX/bin.
if [[ $bindir != /usr/bin && $bindir != /usr/local/bin ]]; then
	for unit in zramnbd-swap@.service zramnbd-fs@.service; do
		sed -i "/^\[Service\]/a Environment=ZRAMNBD=$bindir/zramnbd" "$destdir$unitdir/$unit"
	done
fi
install -m 0644 docs/daemon.md "$destdir$docdir/daemon.md"
install -m 0644 docs/zramnbd.conf.example "$destdir$docdir/zramnbd.conf.example"

echo "installed zramnbd into ${destdir:-}$prefix and units into ${destdir:-}$unitdir"
if [[ -z $destdir ]] && [[ -d /run/systemd/system ]]; then
	systemctl daemon-reload
	cat <<EOT
next steps:
  systemctl enable --now zramnbd.service            # the daemon (config: /etc/zramnbd.conf)
  systemctl enable --now zramnbd-swap@zram0.service # swap on zram0 (needs the nbd kernel module)
  zramnbd status
EOT
fi
