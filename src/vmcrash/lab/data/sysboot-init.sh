#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "vmcrash-sysboot: initramfs"
modprobe -a virtio_pci virtio_blk virtio_net virtio_console crc32c_generic ext4
i=0
while [ ! -b /dev/vda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
mkdir -p /newroot
if ! mount -t ext4 -o rw /dev/vda /newroot; then
  echo "vmcrash-sysboot: cannot mount /dev/vda"
  poweroff -f
fi
echo "vmcrash-sysboot: switching to systemd"
umount /proc /sys
mount --move /dev /newroot/dev || umount /dev
exec switch_root /newroot /sbin/init
