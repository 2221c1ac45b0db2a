#!/usr/bin/env bash
# mutate.sh: a small mutation test of the files that carry the engine's
# invariants (the engine spec's Invariants section; issue 23 item 6).
#
# For each mutant in scripts/mutants.tsv it applies one one-line source edit,
# runs the root package's tests, and restores the file with
# `git checkout -- <file>`. A mutant is "killed" when a test fails (or times
# out), "nocompile" when the package does not build, "survived" otherwise.
#
# How to run (from the repository root, on a clean work tree):
#     scripts/mutate.sh                  # every mutant -> mutation-results.tsv
#     scripts/mutate.sh -o out.tsv 'C0[1-3]|S01'   # only ids matching the regex
#     scripts/mutate.sh apply C02        # apply one mutant and leave it applied
#                                        # (to try a new test against it;
#                                        #  undo with git checkout -- <file>)
# It is slow (each mutant runs the unit tests, then the model at its fixed
# seed when they pass: ~20-60 s a mutant) and edits the work tree, so it is
# run by hand before a stop (a release, the end of a piece of work), never in
# CI. It never uses -race and runs tests with -p 1 (the build machines have
# two shared cores).
#
# mutants.tsv: one mutant a line, tab-separated:
#     id  file  line  old  new  description
# `old` must occur on line `line` of `file`; its first occurrence there is
# replaced by `new` (the literal <DELETE> means the empty string). A line
# whose `old` is not found is reported "stale" (the source moved: fix the
# line number), never run. Lines starting with # are comments.
set -u
cd "$(git rev-parse --show-toplevel)"
MUTANTS=${MUTANTS:-scripts/mutants.tsv}
OUT=mutation-results.tsv
UNIT_TIMEOUT=${UNIT_TIMEOUT:-300s}
MODEL_TIMEOUT=${MODEL_TIMEOUT:-300s}

apply_one() { # file line old new -> 0 if applied
	local file=$1 line=$2 old=$3 new=$4
	[ "$new" = "<DELETE>" ] && new=""
	MUT_LINE=$line MUT_OLD=$old MUT_NEW=$new perl -i -ne '
		if ($. == $ENV{MUT_LINE}) {
			my $o = $ENV{MUT_OLD}; my $n = $ENV{MUT_NEW};
			my $i = index($_, $o);
			if ($i < 0) { $ENV{MUT_FAIL} = 1; print STDERR "stale\n"; }
			else { substr($_, $i, length($o)) = $n; }
		}
		print;' "$file" 2>/tmp/mutate.$$.err
	! grep -q stale /tmp/mutate.$$.err && ! git diff --quiet -- "$file"
}

if [ "${1:-}" = "apply" ]; then
	row=$(awk -F'\t' -v id="$2" '$1 == id' "$MUTANTS")
	[ -n "$row" ] || { echo "no mutant $2" >&2; exit 2; }
	IFS=$'\t' read -r id file line old new desc <<<"$row"
	apply_one "$file" "$line" "$old" "$new" || { git checkout -- "$file"; echo "stale: $id" >&2; exit 1; }
	echo "applied $id ($file:$line): $desc"; git diff -U0 -- "$file" | tail -n +5
	exit 0
fi
if [ "${1:-}" = "-o" ]; then OUT=$2; shift 2; fi
FILTER=${1:-.}

if ! git diff --quiet -- '*.go'; then
	echo "the work tree has uncommitted Go changes: commit or stash them first" >&2
	exit 2
fi
current=""
trap '[ -n "$current" ] && git checkout -- "$current"; rm -f /tmp/mutate.$$.*' EXIT INT TERM

printf 'id\tfile\tline\tresult\tkilled_by\tseconds\tdescription\n' >"$OUT"
while IFS=$'\t' read -r id file line old new desc; do
	echo "$id" | grep -Eq "$FILTER" || continue
	start=$(date +%s)
	current=$file
	if ! apply_one "$file" "$line" "$old" "$new"; then
		git checkout -- "$file"
		printf '%s\t%s\t%s\tstale\t\t0\t%s\n' "$id" "$file" "$line" "$desc" >>"$OUT"
		continue
	fi
	result=survived killer=""
	log=/tmp/mutate.$$.log
	if ! go build . 2>"$log"; then
		result=nocompile killer=$(head -c 200 "$log" | tr '\n\t' '  ')
	elif ! go test -count=1 -p 1 -failfast -timeout "$UNIT_TIMEOUT" -skip 'TestModel' . >"$log" 2>&1; then
		if grep -q '\[build failed\]\|\[setup failed\]' "$log"; then
			result=nocompile killer=$(grep -m1 '\.go:[0-9]' "$log" | tr '\t' ' ')
		else
			result=killed killer=$(grep -Eo -- '--- FAIL: [^ ]+|panic: test timed out|panic: [^ ]+' "$log" | head -3 | tr '\n' ' ')
		fi
	elif ! go test -count=1 -p 1 -failfast -timeout "$MODEL_TIMEOUT" -run 'TestModel' . >"$log" 2>&1; then
		result=killed killer="(model) $(grep -Eo -- '--- FAIL: [^ ]+|panic: test timed out' "$log" | head -3 | tr '\n' ' ')"
	fi
	git checkout -- "$file"
	git clean -fdq -- testdata/rapid # the model's failure files of this mutant
	current=""
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$file" "$line" "$result" "$killer" "$(($(date +%s) - start))" "$desc" >>"$OUT"
	echo "$id $result $killer"
done < <(grep -v '^#' "$MUTANTS" | grep -v '^[[:space:]]*$')
awk -F'\t' 'NR > 1 { t[$2]++; r[$2, $4]++; T++; R[$4]++ }
	END { for (f in t) printf "%-18s killed %2d  nocompile %2d  survived %2d  stale %d  / %d\n", f, r[f,"killed"], r[f,"nocompile"], r[f,"survived"], r[f,"stale"], t[f]
	      printf "%-18s killed %2d  nocompile %2d  survived %2d  stale %d  / %d\n", "TOTAL", R["killed"], R["nocompile"], R["survived"], R["stale"], T }' "$OUT"
