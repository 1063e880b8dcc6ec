import BlockIO
import Foundation
import Testing

/// Which devices a page fault may wait for, from /proc/self/maps, /proc/swaps and a sysfs tree.
@Suite("BlockTopology")
struct TopologyTests {
    /// A sysfs tree: 254:3 (a dm device) on 254:2 on 8:16 (a disk); 8:17 a partition of 8:16.
    static func sysfs(_ root: String) throws {
        func device(_ path: String, _ dev: String, slaves: [String] = [], partition: Bool = false) throws {
            let directory = root + "/devices/" + path
            try FileManager.default.createDirectory(atPath: directory + "/slaves", withIntermediateDirectories: true)
            try Data((dev + "\n").utf8).write(to: URL(fileURLWithPath: directory + "/dev"))
            if partition { try Data("1\n".utf8).write(to: URL(fileURLWithPath: directory + "/partition")) }
            for slave in slaves { try FileManager.default.createDirectory(atPath: directory + "/slaves/" + slave, withIntermediateDirectories: true) }
            let name = (path as NSString).lastPathComponent
            try FileManager.default.createDirectory(atPath: root + "/class/block", withIntermediateDirectories: true)
            try FileManager.default.createSymbolicLink(atPath: root + "/class/block/" + name, withDestinationPath: directory)
            try FileManager.default.createDirectory(atPath: root + "/dev/block", withIntermediateDirectories: true)
            try FileManager.default.createSymbolicLink(atPath: root + "/dev/block/" + dev, withDestinationPath: directory)
        }
        try device("sdb", "8:16")
        try device("sdb/sdb1", "8:17", partition: true)
        try device("dm-2", "254:2", slaves: ["sdb"])
        try device("dm-3", "254:3", slaves: ["dm-2"])
    }

    static let maps = """
        55d0c0000000-55d0c0100000 r-xp 00000000 fe:03 1311 /usr/sbin/snapstack
        7f0000000000-7f0000100000 r-xp 00000000 08:11 42   /usr/lib/x86_64-linux-gnu/lib with space.so
        7f0000200000-7f0000300000 rw-p 00000000 00:00 0
        7f0000400000-7f0000500000 r--p 00000000 00:1f 77   /run/some.cache (deleted)
        7f0000600000-7f0000700000 r--p 00000000 00:15 78   /usr/lib/libz.so
        7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0    [stack]
        """

    static let mountinfo = """
        23 1 0:21 / / ro,relatime - 9p /dev/root ro,trans=virtio
        54 23 0:31 / /run rw,nosuid - tmpfs tmpfs rw
        60 23 0:46 / /srv rw - btrfs /dev/sdd rw
        61 23 8:17 / /data rw shared:5 - ext4 /dev/sdb1 rw
        """

    @Test("the devices under every mapped file and swap area, stacked devices followed down")
    func paging() throws {
        try withTemporaryDirectory { root in
            try Self.sysfs(root.string)
            let swaps = "Filename\tType\tSize\tUsed\tPriority\n/dev/sdc\\0402                partition\t1024\t0\t-2\n"
            let found = try BlockTopology.pagingDevices(
                maps: Self.maps, swaps: swaps, mountinfo: Self.mountinfo, sysfs: root.string,
                deviceOf: { path, partition in path == "/dev/sdc 2" && partition ? DeviceNumber(major: 8, minor: 34) : nil }).get()
            // fe:03 is 254:3, on 254:2, on 8:16; 08:11 is 8:17, a partition of 8:16; 00:1f is
            // 0:31, the tmpfs; 00:15 the 9p root; the swap is 8:34.
            #expect(found == [DeviceNumber(major: 254, minor: 3), DeviceNumber(major: 254, minor: 2), DeviceNumber(major: 8, minor: 16),
                              DeviceNumber(major: 8, minor: 17), DeviceNumber(major: 8, minor: 34)])
        }
    }

    @Test("a mapped file on a file system that may be on a block device without saying which, or a swap area not found, leaves it unknown")
    func unknown() throws {
        let header = "Filename\tType\tSize\tUsed\tPriority\n"
        let onBtrfs = "7f0000400000-7f0000500000 r--p 00000000 00:2e 77   /srv/lib.so\n"
        let notMounted = "7f0000400000-7f0000500000 r--p 00000000 00:63 77   /gone/lib.so\n"
        #expect(throws: BlockTopology.Unknown.self) { try BlockTopology.pagingDevices(maps: onBtrfs, swaps: header, mountinfo: Self.mountinfo).get() }
        #expect(throws: BlockTopology.Unknown.self) { try BlockTopology.pagingDevices(maps: notMounted, swaps: header, mountinfo: Self.mountinfo).get() }
        #expect(throws: BlockTopology.Unknown.self) {
            try BlockTopology.pagingDevices(maps: "", swaps: header + "/swapfile file 1024 0 -2\n", mountinfo: "",
                                            deviceOf: { _, _ in DeviceNumber(major: 0, minor: 31) }).get()
        }
        #expect(throws: BlockTopology.Unknown.self) {
            try BlockTopology.pagingDevices(maps: "", swaps: header + "/gone partition 1024 0 -2\n", mountinfo: "", deviceOf: { _, _ in nil }).get()
        }
        #expect(throws: BlockTopology.Unknown.self) {
            try BlockTopology.pagingDevices(maps: "garbage line with six fields /x", swaps: header, mountinfo: "").get()
        }
        #expect(try BlockTopology.pagingDevices(maps: "", swaps: header, mountinfo: "", sysfs: "/nonexistent").get() == [])
    }
}
