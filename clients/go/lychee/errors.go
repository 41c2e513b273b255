package lychee

import (
	"errors"
	"strings"

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

// wrapError turns an INVALID_ARGUMENT status error into *InvalidArgumentError
// and returns every other error unchanged.
func wrapError(err error) error {
	if err == nil {
		return nil
	}
	var already *InvalidArgumentError
	if errors.As(err, &already) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.InvalidArgument {
		return err
	}
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
