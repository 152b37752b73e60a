// Kensa filter context prelude: evaluated once per Engine, before any user code runs.
//
// It defines the globals filter expressions may use (`event`, `entity`, Sensu's time helpers),
// a private `__kensa` object through which Rust binds values and runs expressions, and then
// deep-freezes the global object and every intrinsic reachable from it. After that, user code
// cannot leave anything behind for the next evaluation (which may belong to another namespace):
// expressions run as strict-mode indirect eval, so their `var`s are local, and every shared
// object is frozen.
//
// The script evaluates to a function taking the bind token: a random string known only to
// Rust, so user code that finds `__kensa.bind` cannot rebind `event` or `entity`.
(function (bindToken) {
  'use strict';
  var global = globalThis;
  var indirectEval = eval;
  var parseJson = JSON.parse;
  var freeze = Object.freeze;
  var objectKeys = Object.keys;
  var isFrozen = Object.isFrozen;
  var getPrototypeOf = Object.getPrototypeOf;
  var getOwnPropertyDescriptor = Object.getOwnPropertyDescriptor;
  var defineProperty = Object.defineProperty;
  var ownKeys = Reflect.ownKeys;
  var trunc = Math.trunc;
  var floor = Math.floor;

  // What the current evaluation sees. Reachable only through the closures below.
  var bound = { event: undefined, entity: undefined, now: 0 };

  // Freezes `root` and everything reachable from it through properties, accessors and
  // prototypes. Objects that are already frozen are taken as done.
  function deepFreeze(root) {
    var pending = [root];
    while (pending.length > 0) {
      var object = pending.pop();
      if ((typeof object !== 'object' && typeof object !== 'function') || object === null ||
          isFrozen(object)) {
        continue;
      }
      freeze(object);
      pending.push(getPrototypeOf(object));
      var keys = ownKeys(object);
      for (var i = 0; i < keys.length; i++) {
        var descriptor = getOwnPropertyDescriptor(object, keys[i]);
        if ('value' in descriptor) {
          pending.push(descriptor.value);
        } else {
          pending.push(descriptor.get, descriptor.set);
        }
      }
    }
    return root;
  }

  // Freezes a JSON.parse result: only plain objects and arrays with data properties, whose
  // prototypes are already frozen. Much cheaper than deepFreeze; runs once per binding.
  function freezeJson(value) {
    if (typeof value === 'object' && value !== null) {
      var keys = objectKeys(value);
      for (var i = 0; i < keys.length; i++) {
        freezeJson(value[keys[i]]);
      }
      freeze(value);
    }
    return value;
  }

  // Sensu's helpers take Unix seconds; a missing or non-numeric argument counts as 0.
  function unixSeconds(t) {
    var seconds = trunc(Number(t));
    return isFinite(seconds) ? seconds : 0;
  }
  function floorMod(value, divisor) {
    return ((value % divisor) + divisor) % divisor;
  }
  var helpers = {
    hour: function hour(t) { return floor(floorMod(unixSeconds(t), 86400) / 3600); },
    minute: function minute(t) { return floor(floorMod(unixSeconds(t), 3600) / 60); },
    second: function second(t) { return floorMod(unixSeconds(t), 60); },
    // 1970-01-01 was a Thursday (4); Sunday is 0.
    weekday: function weekday(t) { return floorMod(floor(unixSeconds(t) / 86400) + 4, 7); },
    seconds_since: function seconds_since(t) {
      var seconds = Number(t);
      return bound.now - (isFinite(seconds) ? seconds : 0);
    }
  };
  var names = ownKeys(helpers);
  for (var i = 0; i < names.length; i++) {
    defineProperty(global, names[i], { value: helpers[names[i]] });
  }
  defineProperty(global, 'event', { get: function () { return bound.event; } });
  defineProperty(global, 'entity', { get: function () { return bound.entity; } });

  defineProperty(global, '__kensa', {
    value: {
      // Evaluates a prepared expression (see engine.rs) and returns its JS truthiness.
      run: function (source) {
        return !!indirectEval(source);
      },
      // Replaces the bound value: kind is 'event' or 'entity', json its synthesized JSON.
      bind: function (token, kind, json, now) {
        if (token !== bindToken) {
          throw new TypeError('binding is reserved to the host');
        }
        var value = freezeJson(parseJson(json));
        bound.event = kind === 'event' ? value : undefined;
        bound.entity = kind === 'entity' ? value : undefined;
        bound.now = now;
      }
    }
  });

  deepFreeze(global);
})
