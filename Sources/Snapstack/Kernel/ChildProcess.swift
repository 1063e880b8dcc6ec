import Foundation

/// A program run to its end with no input, both output streams captured.
struct ChildProcess {
    var status: Int32
    var stdout: String
    var stderr: String

    /// Throws only when the program cannot be started.
    static func run(_ executable: String, _ arguments: [String]) throws -> ChildProcess {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        // stderr is drained beside stdout, so that a child filling one pipe cannot stall.
        let errorData = LockedData()
        let drained = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            errorData.set(err.fileHandleForReading.readDataToEndOfFile())
            drained.signal()
        }
        let output = out.fileHandleForReading.readDataToEndOfFile()
        drained.wait()
        process.waitUntilExit()
        return ChildProcess(status: process.terminationStatus, stdout: String(decoding: output, as: UTF8.self),
                            stderr: String(decoding: errorData.get(), as: UTF8.self))
    }
}

private final class LockedData: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    func set(_ value: Data) { lock.withLock { data = value } }
    func get() -> Data { lock.withLock { data } }
}
