import BlockIO
import SystemPackage
import Testing

@Suite("Loop")
struct LoopTests {
    @Test("the index of a loop device's sysfs name", arguments: [
        ("loop0", 0), ("loop7", 7), ("loop10", 10), ("loop1048575", 1_048_575),
    ] as [(String, Int)])
    func index(name: String, expected: Int) {
        #expect(Loop.loopIndex(ofName: name) == expected)
    }

    @Test("other sysfs block names are not loop devices", arguments: [
        "loop", "loop-control", "loop0p1", "loop01", "loop-1", "loop+1", "loopa", "sda", "dm-0", "nloop0", "loop٣",
    ])
    func notIndex(name: String) {
        #expect(Loop.loopIndex(ofName: name) == nil)
    }

    @Test("attach of a missing file fails at its open, naming the file")
    func attachMissingFile() {
        #expect(throws: LoopError(path: "/nonexistent/snapstack.img", reason: .system(operation: "open", .noSuchFileOrDirectory))) {
            try Loop.attach(file: "/nonexistent/snapstack.img")
        }
    }

    @Test("detach and refreshCapacity refuse what is not a loop device", arguments: ["/dev/null", "/dev/zero"])
    func notALoopDevice(path: String) {
        #expect(throws: LoopError(path: path, reason: .notALoopDevice)) { try Loop.detach(path) }
        #expect(throws: LoopError(path: path, reason: .notALoopDevice)) { try Loop.refreshCapacity(path) }
    }

    @Test("detach of a missing node is an error, not a no-op")
    func detachMissingNode() {
        #expect(throws: LoopError(path: "/dev/snapstack-no-loop", reason: .system(operation: "open", .noSuchFileOrDirectory))) {
            try Loop.detach("/dev/snapstack-no-loop")
        }
    }

    @Test("all() lists only loop devices, each with its backing file")
    func all() throws {
        // Hosts without loop support list none; hosts with snaps or images list theirs.
        for device in try Loop.all() {
            #expect(device.path.hasPrefix("/dev/loop"))
            #expect(device.number.major == Loop.major)
            #expect(device.backingFile != nil)
        }
        #expect(try Loop.find(backingFile: "/nonexistent/snapstack.img").isEmpty)
    }

    @Test("errors say which device and which call failed")
    func descriptions() {
        let busy = LoopError(path: "/dev/loop3", reason: .system(operation: "LOOP_CLR_FD", .resourceBusy))
        #expect(busy.errno == .resourceBusy)
        #expect("\(busy)".hasPrefix("/dev/loop3: LOOP_CLR_FD failed: "))
        let leftOver = LoopError(path: "/dev/loop4", reason: .system(operation: "LOOP_SET_STATUS64", .invalidArgument),
                                 leftOver: "LOOP_CLR_FD of /dev/loop4 failed: Device or resource busy")
        #expect("\(leftOver)".contains("undoing it failed too: LOOP_CLR_FD of /dev/loop4"))
        #expect(LoopError(path: "/dev/loop-control", reason: .noFreeDevice(attempts: 8)).errno == nil)
    }
}
