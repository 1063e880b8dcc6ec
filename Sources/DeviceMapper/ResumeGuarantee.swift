/// What every call that holds devices suspended reports, written once: `body` runs (it does
/// the suspends, then the caller's work), and `resumeAll` resumes whatever it suspended, on
/// success and on every error. A failed resume never hides the error that came first: it rides
/// along as the rollback failure. Used by `withSuspended` (libdm, one device after another)
/// and `withSuspendedTogether` (raw ioctls, all at once).
enum ResumeGuarantee {
    static func run<T>(_ body: () throws -> T, resumingWith resumeAll: () -> [String]) throws -> T {
        let result: T
        do {
            result = try body()
        } catch var error as DeviceMapperError {
            let failures = resumeAll()
            if !failures.isEmpty { error.rollbackFailure = failures.joined(separator: "; ") }
            throw error
        } catch {
            let failures = resumeAll()
            if !failures.isEmpty {
                throw DeviceMapperError(kind: .failed, operation: "resume", messages: failures, rollbackFailure: "\(error)")
            }
            throw error
        }
        let failures = resumeAll()
        if !failures.isEmpty {
            throw DeviceMapperError(kind: .failed, operation: "resume", messages: failures)
        }
        return result
    }
}
