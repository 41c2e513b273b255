package lychee

import (
	"errors"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// FieldViolation is one entry of the google.rpc.BadRequest detail of an
// INVALID_ARGUMENT status.
type FieldViolation struct {
	// Field is the path of the offending field in the request, e.g.
	// "documents[1].parts[0].text" or "documents[0].parts[0].image".
	Field string
	// Description says what is wrong with it.
	Description string
	// Reason is a machine-readable reason, when the server sets one.
	Reason string
}

// InvalidArgumentError is returned for a call that failed with
// codes.InvalidArgument. Use errors.As to get it. It still carries the gRPC
// status: status.Code(err) == codes.InvalidArgument.
type InvalidArgumentError struct {
	// Message is the status message.
	Message string
	// Violations are the field violations from the google.rpc.BadRequest
	// detail (empty when the server sent none).
	Violations []FieldViolation

	st *status.Status
}

func (e *InvalidArgumentError) Error() string {
	var b strings.Builder
	b.WriteString("lychee: invalid argument: ")
	b.WriteString(e.Message)
	// List the violations the status message does not already spell out.
	sep := " ["
	for _, v := range e.Violations {
		item := v.Field + ": " + v.Description
		if strings.Contains(e.Message, item) {
			continue
		}
		b.WriteString(sep)
		b.WriteString(item)
		sep = "; "
	}
	if sep == "; " {
		b.WriteString("]")
	}
	return b.String()
}

// GRPCStatus returns the underlying status, so that status.FromError and
// status.Code keep working on the error.
func (e *InvalidArgumentError) GRPCStatus() *status.Status { return e.st }

// Violation returns the violation of the given field path, if any.
func (e *InvalidArgumentError) Violation(field string) (FieldViolation, bool) {
	for _, v := range e.Violations {
		if v.Field == field {
			return v, true
		}
	}
	return FieldViolation{}, false
}

// Fields returns the paths of all violations, in order.
func (e *InvalidArgumentError) Fields() []string {
	out := make([]string, len(e.Violations))
	for i, v := range e.Violations {
		out[i] = v.Field
	}
	return out
}

// ErrUnauthenticated matches (errors.Is) every *UnauthenticatedError.
var ErrUnauthenticated = errors.New("lychee: unauthenticated")

// ErrOverloaded matches (errors.Is) every *OverloadedError.
var ErrOverloaded = errors.New("lychee: server overloaded")

// UnauthenticatedError is returned for a call that failed with
// codes.Unauthenticated: the server requires a bearer token (WithBearerToken)
// and none or a wrong one was sent. Retrying with the same token cannot help.
type UnauthenticatedError struct {
	// Message is the status message.
	Message string

	st *status.Status
}

func (e *UnauthenticatedError) Error() string { return "lychee: unauthenticated: " + e.Message }

// Is makes errors.Is(err, ErrUnauthenticated) true.
func (e *UnauthenticatedError) Is(target error) bool { return target == ErrUnauthenticated }

// GRPCStatus keeps status.Code(err) == codes.Unauthenticated.
func (e *UnauthenticatedError) GRPCStatus() *status.Status { return e.st }

// OverloadedError is returned when the server refused a call with
// codes.ResourceExhausted and a google.rpc.RetryInfo detail: its queue or its
// concurrent requests are over their bound. The client does not retry it by
// itself (a retry storm is what overload feeds on); the caller decides, e.g.
//
//	var over *lychee.OverloadedError
//	if errors.As(err, &over) {
//		time.Sleep(over.RetryAfter) // or try another replica, or shed the request
//	}
//
// RESOURCE_EXHAUSTED without RetryInfo (such as a message over gRPC's size
// limit, produced by the client library itself) stays a plain status error:
// waiting does not fix it.
type OverloadedError struct {
	// Message is the status message.
	Message string
	// RetryAfter is the delay the server asked for before trying again.
	RetryAfter time.Duration

	st *status.Status
}

func (e *OverloadedError) Error() string {
	return "lychee: server overloaded, retry after " + e.RetryAfter.String() + ": " + e.Message
}

// Is makes errors.Is(err, ErrOverloaded) true.
func (e *OverloadedError) Is(target error) bool { return target == ErrOverloaded }

// GRPCStatus keeps status.Code(err) == codes.ResourceExhausted.
func (e *OverloadedError) GRPCStatus() *status.Status { return e.st }

// wrapError turns a status error into the typed error of its code
// (*InvalidArgumentError, *UnauthenticatedError, *OverloadedError) and returns
// every other error unchanged.
func wrapError(err error) error {
	if err == nil {
		return nil
	}
	var (
		inv    *InvalidArgumentError
		unauth *UnauthenticatedError
		over   *OverloadedError
	)
	if errors.As(err, &inv) || errors.As(err, &unauth) || errors.As(err, &over) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.InvalidArgument:
		return invalidArgument(st)
	case codes.Unauthenticated:
		return &UnauthenticatedError{Message: st.Message(), st: st}
	case codes.ResourceExhausted:
		for _, d := range st.Details() {
			if ri, ok := d.(*errdetails.RetryInfo); ok {
				// A negative delay is a server bug; never hand a caller a negative sleep.
				return &OverloadedError{Message: st.Message(), RetryAfter: max(ri.GetRetryDelay().AsDuration(), 0), st: st}
			}
		}
	}
	return err
}

func invalidArgument(st *status.Status) *InvalidArgumentError {
	e := &InvalidArgumentError{Message: st.Message(), st: st}
	for _, d := range st.Details() {
		br, ok := d.(*errdetails.BadRequest)
		if !ok {
			continue
		}
		for _, fv := range br.GetFieldViolations() {
			e.Violations = append(e.Violations, FieldViolation{
				Field:       fv.GetField(),
				Description: fv.GetDescription(),
				Reason:      fv.GetReason(),
			})
		}
	}
	return e
}
