import BlockIO
import Foundation
import SystemPackage
import Testing

@Suite("WriteCache")
struct WriteCacheTests {
    @Test("the two modes are the kernel's words for them")
    func words() {
        #expect(WriteCache(rawValue: "write back") == .writeBack)
        #expect(WriteCache(rawValue: "write through") == .writeThrough)
        #expect(WriteCache(rawValue: "writeback") == nil)
    }

    @Test("the mode of a partition is its disk's, as sysfs holds it")
    func partitionAnswersWithItsDisk() throws {
        // Every block device with a queue, and its partitions: the disk's queue/write_cache is
        // the witness for both.
        let disks = try FileManager.default.contentsOfDirectory(atPath: "/sys/block")
        var checked = 0
        for disk in disks {
            guard let text = try? String(contentsOfFile: "/sys/block/\(disk)/queue/write_cache", encoding: .utf8),
                  let dev = try? String(contentsOfFile: "/sys/block/\(disk)/dev", encoding: .utf8),
                  let number = DeviceNumber(parsing: dev.trimmingCharacters(in: .whitespacesAndNewlines))
            else { continue }
            let expected = WriteCache(rawValue: text.trimmingCharacters(in: .whitespacesAndNewlines))
            #expect(try WriteCache.of(number) == expected, "\(disk)")
            checked += 1
            let partitions = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/block/\(disk)"))?
                .filter { $0.hasPrefix(disk) } ?? []
            for partition in partitions {
                guard let dev = try? String(contentsOfFile: "/sys/block/\(disk)/\(partition)/dev", encoding: .utf8),
                      let number = DeviceNumber(parsing: dev.trimmingCharacters(in: .whitespacesAndNewlines))
                else { continue }
                #expect(try WriteCache.of(number) == expected, "\(partition)")
            }
        }
        try #require(checked > 0, "no block device with a queue under /sys/block")
    }

    @Test("a device number that does not exist is an error, not a guess")
    func missing() {
        #expect(throws: Errno.noSuchFileOrDirectory) { try WriteCache.of(DeviceNumber(major: 4095, minor: 1048575)) }
    }
}
