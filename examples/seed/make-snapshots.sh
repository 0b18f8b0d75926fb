#!/bin/sh
# Make the seed story's snapshots of one root filesystem, each a full copy of the one
# before plus one step:  os → webserver → config → site-a / site-b.
# Usage: make-snapshots.sh OUTDIR      (needs busybox-static: /bin/busybox)
set -eu
out=${1:?usage: make-snapshots.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "make-snapshots: $busybox not found (apt-get install busybox-static)" >&2; exit 1; }
rm -rf "$out"; mkdir -p "$out"

# 1. the OS: busybox and its applets, the usual directories, users.
os="$out/os"
mkdir -p "$os/bin" "$os/etc" "$os/tmp" "$os/root" "$os/var" "$os/proc" "$os/sys" "$os/dev" "$os/usr/bin"
cp "$busybox" "$os/bin/busybox"
for applet in sh ls cat echo mkdir rm cp mv ln ps wget vi sleep id env; do
    ln -s busybox "$os/bin/$applet"
done
chmod 1777 "$os/tmp"; chmod 700 "$os/root"
printf 'root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/false\n' > "$os/etc/passwd"
printf 'root:x:0:\nwww-data:x:33:\n' > "$os/etc/group"
echo "lamina-seed" > "$os/etc/hostname"

# 2. the web server "installed": busybox httpd and its document root.
cp -a "$os" "$out/webserver"
ln -s busybox "$out/webserver/bin/httpd"
mkdir -p "$out/webserver/var/www/html"

# 3. the server's configuration.
cp -a "$out/webserver" "$out/config"
cp "$here/httpd.conf" "$out/config/etc/httpd.conf"

# 4. the page: A and B differ only here.
for site in a b; do
    cp -a "$out/config" "$out/site-$site"
    cp "$here/index-$site.html" "$out/site-$site/var/www/html/index.html"
done
