// k8s-validate checks rendered Kubernetes manifests (helm template output) against the Kubernetes API
// types without a cluster, so that a chart error shows up in `make test` rather than at `kubectl apply`.
//
// Every YAML document read from the files named on the command line (or stdin) must:
//   - name an apiVersion/kind this program knows (core, apps, autoscaling/v2, networking, policy, batch,
//     rbac): an unknown kind or a removed API version fails;
//   - decode strictly into its Go type (apimachinery's strict JSON serializer): an unknown or duplicated
//     field, or a value of the wrong type, fails;
//   - carry every field the Go type requires: a struct field whose json tag lacks omitempty is required
//     by the Kubernetes API conventions (the OpenAPI schema's "required" lists come from the same rule),
//     so a missing one fails, at any depth (containers[0].image, ports[1].port, ...);
//   - have a DNS-1123 metadata.name, and a Deployment's or StatefulSet's selector must match its pod
//     template's labels (the API server rejects both).
//
// Each error names the file, the document's kind/name and the field path. Exit status: 0 when every
// object is valid, 1 when any is not, 2 on a usage or read error.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"reflect"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8slabels "k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilvalidation "k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

func newScheme() *runtime.Scheme {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, autoscalingv2.AddToScheme, batchv1.AddToScheme,
		networkingv1.AddToScheme, policyv1.AddToScheme, rbacv1.AddToScheme,
	} {
		if err := add(scheme); err != nil {
			panic(err)
		}
	}
	return scheme
}

// splitDocuments cuts a YAML stream at its `---` lines, dropping documents that hold only comments.
func splitDocuments(data []byte) [][]byte {
	var docs [][]byte
	var current bytes.Buffer
	flush := func() {
		if hasContent(current.Bytes()) {
			docs = append(docs, append([]byte(nil), current.Bytes()...))
		}
		current.Reset()
	}
	for _, line := range strings.SplitAfter(string(data), "\n") {
		if strings.TrimRight(line, " \t\r\n") == "---" {
			flush()
			continue
		}
		current.WriteString(line)
	}
	flush()
	return docs
}

func hasContent(doc []byte) bool {
	for _, line := range strings.Split(string(doc), "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed != "" && !strings.HasPrefix(trimmed, "#") {
			return true
		}
	}
	return false
}

// sourceOf is helm template's "# Source: chart/templates/x.yaml" comment, when present.
func sourceOf(doc []byte) string {
	for _, line := range strings.Split(string(doc), "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "# Source: "); ok {
			return rest
		}
	}
	return ""
}

type validator struct {
	scheme  *runtime.Scheme
	decoder runtime.Decoder
}

func newValidator() *validator {
	scheme := newScheme()
	strict := kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme, scheme,
		kjson.SerializerOptions{Yaml: false, Pretty: false, Strict: true})
	return &validator{scheme: scheme, decoder: strict}
}

// validate returns the problems of one YAML document (none = valid) and its "Kind/name" label.
func (v *validator) validate(doc []byte) (string, []string) {
	jsonDoc, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return "?", []string{fmt.Sprintf("not valid YAML: %v", err)}
	}
	var raw map[string]any
	if err := json.Unmarshal(jsonDoc, &raw); err != nil {
		return "?", []string{fmt.Sprintf("not a YAML mapping: %v", err)}
	}
	apiVersion, _ := raw["apiVersion"].(string)
	kind, _ := raw["kind"].(string)
	name := ""
	if meta, ok := raw["metadata"].(map[string]any); ok {
		name, _ = meta["name"].(string)
	}
	label := kind + "/" + name
	if apiVersion == "" || kind == "" {
		return label, []string{"apiVersion and kind are required"}
	}
	gvk := schema.FromAPIVersionAndKind(apiVersion, kind)
	if !v.scheme.Recognizes(gvk) {
		return label, []string{fmt.Sprintf("unknown apiVersion/kind %s %s", apiVersion, kind)}
	}
	obj, _, err := v.decoder.Decode(jsonDoc, &gvk, nil)
	if err != nil {
		return label, []string{fmt.Sprintf("strict decoding: %v", err)}
	}
	var problems []string
	problems = append(problems, missingRequired(reflect.TypeOf(obj).Elem(), raw, "")...)
	if name == "" {
		problems = append(problems, "metadata.name: required")
	} else if errs := utilvalidation.IsDNS1123Subdomain(name); len(errs) > 0 {
		problems = append(problems, fmt.Sprintf("metadata.name %q: %s", name, strings.Join(errs, "; ")))
	}
	problems = append(problems, selectorProblems(obj)...)
	return label, problems
}

// jsonName is a struct field's JSON key, whether it is inlined, and whether it may be left out.
func jsonName(field reflect.StructField) (name string, inline bool, optional bool) {
	tag := field.Tag.Get("json")
	if tag == "-" {
		return "", false, true
	}
	parts := strings.Split(tag, ",")
	for _, option := range parts[1:] {
		switch option {
		case "inline":
			inline = true
		case "omitempty", "omitzero":
			optional = true
		}
	}
	if parts[0] == "" && field.Anonymous {
		inline = true
	}
	return parts[0], inline, optional
}

// Fields with no omitempty that the API still treats as optional (their Go doc says +optional).
var optionalWithoutOmitempty = map[string]bool{
	"ObjectMeta.CreationTimestamp": true, // metav1.Time: a struct, serialized as null when unset
}

// missingRequired walks a decoded object's Go type along the raw JSON and lists absent required fields.
func missingRequired(t reflect.Type, raw any, path string) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	var problems []string
	switch t.Kind() {
	case reflect.Struct:
		object, ok := raw.(map[string]any)
		if !ok {
			return nil
		}
		if t == reflect.TypeOf(metav1.Time{}) || t == reflect.TypeOf(runtime.RawExtension{}) {
			return nil
		}
		for i := 0; i < t.NumField(); i++ {
			field := t.Field(i)
			if !field.IsExported() {
				continue
			}
			name, inline, optional := jsonName(field)
			if inline {
				problems = append(problems, missingRequired(field.Type, object, path)...)
				continue
			}
			if name == "" {
				continue
			}
			child := joinPath(path, name)
			value, present := object[name]
			if !present || value == nil {
				if !optional && !optionalWithoutOmitempty[t.Name()+"."+field.Name] && field.Type.Kind() != reflect.Bool {
					problems = append(problems, child+": required field is missing")
				}
				continue
			}
			problems = append(problems, missingRequired(field.Type, value, child)...)
		}
	case reflect.Slice:
		items, ok := raw.([]any)
		if !ok {
			return nil
		}
		for index, item := range items {
			problems = append(problems, missingRequired(t.Elem(), item, fmt.Sprintf("%s[%d]", path, index))...)
		}
	case reflect.Map:
		entries, ok := raw.(map[string]any)
		if !ok {
			return nil
		}
		keys := make([]string, 0, len(entries))
		for key := range entries {
			keys = append(keys, key)
		}
		sort.Strings(keys)
		for _, key := range keys {
			problems = append(problems, missingRequired(t.Elem(), entries[key], joinPath(path, key))...)
		}
	}
	return problems
}

func joinPath(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// selectorProblems: a workload whose selector does not select its own pod template is rejected.
func selectorProblems(obj runtime.Object) []string {
	var selector *metav1.LabelSelector
	var labels map[string]string
	switch workload := obj.(type) {
	case *appsv1.Deployment:
		selector, labels = workload.Spec.Selector, workload.Spec.Template.Labels
	case *appsv1.StatefulSet:
		selector, labels = workload.Spec.Selector, workload.Spec.Template.Labels
	case *appsv1.DaemonSet:
		selector, labels = workload.Spec.Selector, workload.Spec.Template.Labels
	default:
		return nil
	}
	if selector == nil {
		return nil // reported as a missing required field
	}
	compiled, err := metav1.LabelSelectorAsSelector(selector)
	if err != nil {
		return []string{fmt.Sprintf("spec.selector: %v", err)}
	}
	if compiled.Empty() {
		return []string{"spec.selector: empty selector"}
	}
	if !compiled.Matches(k8slabels.Set(labels)) {
		return []string{fmt.Sprintf("spec.selector %q does not match spec.template.metadata.labels %v", compiled, labels)}
	}
	return nil
}

func readInputs(args []string) (map[string][]byte, []string, error) {
	inputs := map[string][]byte{}
	var order []string
	if len(args) == 0 {
		data, err := io.ReadAll(os.Stdin)
		if err != nil {
			return nil, nil, err
		}
		inputs["-"] = data
		return inputs, []string{"-"}, nil
	}
	for _, path := range args {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, nil, err
		}
		inputs[path] = data
		order = append(order, path)
	}
	return inputs, order, nil
}

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "-h" || os.Args[1] == "--help") {
		fmt.Println("usage: k8s-validate [MANIFEST.yaml ...]   (stdin when none): strict Kubernetes API validation")
		return
	}
	inputs, order, err := readInputs(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "k8s-validate:", err)
		os.Exit(2)
	}
	v := newValidator()
	objects, failed := 0, 0
	for _, path := range order {
		for index, doc := range splitDocuments(inputs[path]) {
			objects++
			label, problems := v.validate(doc)
			where := fmt.Sprintf("%s#%d", path, index+1)
			if source := sourceOf(doc); source != "" {
				where += " (" + source + ")"
			}
			for _, problem := range problems {
				fmt.Printf("%s %s: %s\n", where, label, problem)
			}
			if len(problems) > 0 {
				failed++
			}
		}
	}
	if objects == 0 {
		fmt.Fprintln(os.Stderr, "k8s-validate: no objects found")
		os.Exit(1)
	}
	fmt.Printf("k8s-validate: %d objects, %d invalid\n", objects, failed)
	if failed > 0 {
		os.Exit(1)
	}
}
