import ArgumentParser

/// snapstack's exit codes. They are part of the interface: scripts rely on them, so a code's
/// meaning never changes and new meanings get new numbers. Documented in README.md.
enum ExitStatus: Int32, CaseIterable {
    /// Success.
    case ok = 0
    /// The operation failed; the message says what, why and what to do.
    case failed = 1
    /// The kernel cannot run snapstack: no device-mapper driver, or a target is missing.
    case kernelUnsupported = 3
    /// `doctor`: the kernel is fine, but udev or the state directory is not.
    case environmentIncomplete = 4
    /// Bad arguments or options (ArgumentParser's `validationFailure`, sysexits' EX_USAGE).
    case usage = 64

    var exitCode: ExitCode { ExitCode(rawValue) }
}
